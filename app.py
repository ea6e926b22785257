"""gptdash: train small GPTs from the browser. Run with `make run`."""

import math
import os
from pathlib import Path

import streamlit as st

from gptcore.errors import GptdashError
from jobs.errors import USER_ERRORS
from jobs.serve import PASSWORD_ENV, check_bind, password_ok
from storage.errors import DatabaseUnavailable
from ui import login_throttle
from ui.plain_text import plain
from ui.widgets import database_away, get_store, sidebar

# A local icon: a Material or emoji page_icon makes the browser fetch it from a CDN.
ICON = Path(__file__).parent / "ui" / "assets" / "icon.png"
st.set_page_config(page_title="gptdash", page_icon=str(ICON), layout="wide")

PAGES = [
    st.Page("app_pages/new_run.py", title="New run", icon=":material/rocket_launch:", default=True),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/table_rows:", url_path="runs"),
    st.Page("app_pages/live.py", title="Live run", icon=":material/monitoring:", url_path="live"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:",
            url_path="compare"),
    st.Page("app_pages/sweeps.py", title="Sweeps", icon=":material/grid_view:",
            url_path="sweeps"),
    st.Page("app_pages/compute.py", title="Compute", icon=":material/show_chart:",
            url_path="compute"),
    st.Page("app_pages/plan.py", title="Plan", icon=":material/calculate:", url_path="plan"),
    st.Page("app_pages/playground.py", title="Playground", icon=":material/edit_note:",
            url_path="playground"),
    st.Page("app_pages/workers.py", title="Workers", icon=":material/dns:", url_path="workers"),
]

# Checked before any page renders: off loopback, the dashboard needs a password.
address = st.get_option("server.address") or "0.0.0.0"
password = os.environ.get(PASSWORD_ENV)
try:
    check_bind(address, password)
except GptdashError as exc:
    st.error(plain(exc))
    st.stop()
locked = bool(password) and not st.session_state.get("authenticated")
# Navigation first, even behind the password: it resolves the page the URL asks for
# (/live?run=3), which the rerun after the password then opens instead of the default.
page = st.navigation(PAGES, position="hidden" if locked else "sidebar")
if locked:
    st.title("gptdash")
    # A form: a try after a wait may resend the same text, which a bare input would ignore.
    with st.form("password"):
        given = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Open")
    if submitted and given:
        # Loopback has no address (None); behind a local proxy, its X-Forwarded-For.
        client = st.context.ip_address or "localhost"
        attempt = login_throttle.THROTTLE.attempt(client, lambda: password_ok(given, password))
        if attempt.accepted:
            st.session_state.authenticated = True
            st.rerun()
        elif attempt.wait_s:
            st.error(f"Too many wrong passwords; try again in {math.ceil(attempt.wait_s)} s.")
        else:
            st.error("Wrong password.")
    st.stop()

try:
    sidebar(get_store())
    page.run()
except DatabaseUnavailable as exc:  # one box, gone by itself once the database answers
    database_away(exc)
except USER_ERRORS as exc:  # e.g. a wrong database URL: one line, not a traceback
    st.error(plain(exc))
