"""Demo models."""

from prunekit.zoo.lenet import LeNet5, lenet5

__all__ = ["LeNet5", "lenet5"]
