"""sslzoo: a registry-based zoo of semi-supervised learning algorithms for facial expression recognition."""
__version__ = "0.1.0"
