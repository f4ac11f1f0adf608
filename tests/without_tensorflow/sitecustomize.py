"""On PYTHONPATH, makes this interpreter (and every child that inherits the variable) one where TensorFlow is
not installed, as on the GPU machines: the path finder no longer finds it, so `import tensorflow` raises
ModuleNotFoundError, importlib.util.find_spec("tensorflow") is None and it is never in sys.modules."""

import sys
from importlib.machinery import PathFinder

HIDDEN = ("tensorflow", "tf_keras", "tensorboard")


class _PathFinderWithoutTensorFlow:
    @staticmethod
    def find_spec(name, path=None, target=None):
        return None if name.split(".")[0] in HIDDEN else PathFinder.find_spec(name, path, target)

    @staticmethod
    def find_distributions(*args, **kwargs):  # importlib.metadata asks the path finder for installed packages
        return (
            d
            for d in PathFinder.find_distributions(*args, **kwargs)
            if d.metadata["Name"].lower().replace("-", "_") not in HIDDEN
        )

    @staticmethod
    def invalidate_caches():
        PathFinder.invalidate_caches()


sys.meta_path[:] = [_PathFinderWithoutTensorFlow if f is PathFinder else f for f in sys.meta_path]
