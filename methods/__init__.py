"""Built-in method plugins, one module each. Any ``*.py`` dropped here appears in every command."""
