"""Evaluation over a data set: one runner (``runner.evaluate``, the ``fastloc-viz evaluate`` command)
for the localization metrics, faithfulness (deletion / insertion) and the randomization sanity check."""
