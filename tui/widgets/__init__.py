"""Widgets of the app that Textual does not ship: the terminal line chart, metric cards, the GPU panel."""
