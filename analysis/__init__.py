"""Pure numeric analysis of runs: loss forecasts, sweep expansion, the compute frontier.

numpy, scipy and the standard library only: no torch, storage or streamlit, so pages,
jobs and the CLI can call it cheaply and tests need nothing else.
"""
