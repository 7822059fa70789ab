# Co-occurrence of Matryoshka latents (issue 4, methods §2).


def cooccurrence_targets():
    """Every figure of this analysis that the config asks for."""
    return []
