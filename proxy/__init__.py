"""tproxy: proxy."""
