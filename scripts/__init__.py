"""The `tongban` ops CLI."""
