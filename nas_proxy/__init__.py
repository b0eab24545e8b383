"""nas-proxy: rank neural architectures on tiny proxy training sets instead of the whole data."""

from nas_proxy.data import Split, list_datasets, load_dataset, make_synthetic
from nas_proxy.device import default_device
from nas_proxy.errors import DataNotFoundError, NasProxyError, UnknownNameError
from nas_proxy.models import build_model, count_flops, count_params
from nas_proxy.proxies import ProxySet, build_proxy, get_builder, list_builders, load_proxy, save_proxy
from nas_proxy.space import ArchSpec, SearchSpace, list_spaces, load_space
from nas_proxy.train import TrainConfig, accuracy, train_and_evaluate, train_model

__version__ = "0.1.0"

__all__ = [
    "ArchSpec",
    "DataNotFoundError",
    "NasProxyError",
    "ProxySet",
    "SearchSpace",
    "Split",
    "TrainConfig",
    "UnknownNameError",
    "__version__",
    "accuracy",
    "build_model",
    "build_proxy",
    "count_flops",
    "count_params",
    "default_device",
    "get_builder",
    "list_builders",
    "list_datasets",
    "list_spaces",
    "load_dataset",
    "load_proxy",
    "load_space",
    "make_synthetic",
    "save_proxy",
    "train_and_evaluate",
    "train_model",
]
