"""The user-input error every module raises: the CLI prints its one-line message and exits 2."""


class ConfigError(ValueError):
    """Bad user input (config, suite, space or YAML file, ``key=value``, path); the message is one line
    naming the file, key or value."""
