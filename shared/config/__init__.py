"""Configuration: recipes (YAML + key=value overrides, checked against the real config classes), user errors (one
line, exit code 2), the command line every stage script shares, run folders (`runs/<model>/<run>/final`) and the
file helpers every writer uses (repository-relative paths, atomic writes). Imports nothing else from slm."""
