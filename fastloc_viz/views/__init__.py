"""Views: plotly figures, neuron cards and the HTML report, from results already computed."""
