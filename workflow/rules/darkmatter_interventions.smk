# The dark matter of SAEs, interventions (issue 5, methods §5.5-5.8): gradient pursuit, downstream
# CE, predicting error from other components, training SAEs on the error.


def darkmatter_intervention_targets():
    """Every figure of the intervention analyses that the config asks for."""
    return []
