# SAE feature trajectories through attention (issue 6, methods §6).


def trajectory_targets():
    """Every figure of this analysis that the config asks for."""
    return []
