"""Evaluation over a data set: localization metrics, faithfulness (deletion / insertion) and the randomization sanity check."""
