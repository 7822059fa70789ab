# The dark matter of SAEs (issue 5, methods §5).


def darkmatter_targets():
    """Every figure of this analysis that the config asks for."""
    return []
