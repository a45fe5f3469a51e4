"""textft: fine-tune Hugging Face encoders for text classification."""

from textft.version import __version__  # noqa: F401


def train(config_path=None, overrides=None):
    """Train from a preset name (``textft configs list``) or a YAML file plus ``section.key=value`` overrides;
    returns the final reports."""
    from textft.config import load_config
    from textft.train import train as train_config

    return train_config(load_config(config_path, overrides))


def load(model, **kwargs):
    """A saved classifier (a directory or hub id) ready for ``.predict(texts)``; see
    ``textft.classifier.Classifier.from_pretrained``."""
    from textft.classifier import Classifier

    return Classifier.from_pretrained(model, **kwargs)
