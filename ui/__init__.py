"""Pure helpers for the Streamlit pages: figures, downsampling, smoothing, forms, config diffs.

Only ``ui/widgets.py`` imports streamlit; everything else here is tested without a browser.
"""
