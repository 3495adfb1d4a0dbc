"""scratchnet: a from-scratch ConvNet engine (NumPy + Numba on the CPU, CuPy on the GPU) that
reproduces Simonyan, Vedaldi & Zisserman (2013), "Deep Inside Convolutional Networks:
Visualising Image Classification Models and Saliency Maps".

    import scratchnet as sn
    net = sn.models.paper_net(input_size=64, num_classes=200)
    scores = net.forward(x)                       # x (N, 3, 64, 64) float32 -> (N, 200)
    dx = net.backward(onehot, rule="gradient")    # d score / d image, (N, 3, 64, 64)
"""
__version__ = "0.1.0"

from . import threads as _threads  # noqa: E402  (before NumPy: see scratchnet/threads.py)

_threads.set_defaults()

from . import backend, layers  # noqa: E402
from .layers import Rule  # noqa: E402


def __getattr__(name):  # lazy: models pulls in readers that most users of layers do not need
    if name in ("models", "vis", "localise", "train", "io"):
        import importlib
        return importlib.import_module(f"scratchnet.{name}")
    raise AttributeError(name)
