"""Mini-app registry, versions and review, catalog, the WeChat-compatible SDK, messages, ratings."""
