"""textft: fine-tune Hugging Face encoders for text classification."""

__version__ = "0.1.0"


def train(config_path=None, overrides=None):
    """Train from a YAML config plus ``section.key=value`` overrides; returns the final reports."""
    from textft.config import load_config
    from textft.train import train as _train

    return _train(load_config(config_path, overrides))


def load(model_dir, **kwargs):
    """A saved classifier ready for ``.predict(texts)``; see ``textft.inference.Classifier.from_pretrained``."""
    from textft.inference import Classifier

    return Classifier.from_pretrained(model_dir, **kwargs)
