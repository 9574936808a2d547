"""The gradient engine: the guided-backprop rule, the neuron ranking, the neuron passes, and Captum's maps (its only importer)."""
