"""Object detection: backbones (ResNet, ResNeXt, VGG16 with frozen BatchNorm), FPN, RoIAlign, the
static-shape detection ops (anchors, box coder, NMS, sampling), the Faster R-CNN detector,
Scene-Graph-Benchmark's union feature extractor of relation pairs (``union_features``) and the
converters of PyTorch (torchvision, maskrcnn_benchmark, Scene-Graph-Benchmark) weights. It depends
on the core and on :mod:`sgg_jax.data` only; relation models use it for the ``roi`` feature source
and for SGDet candidates.
"""
