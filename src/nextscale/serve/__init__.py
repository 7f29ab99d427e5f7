"""`nextscale serve`: a local web app to generate and edit images, on the Python standard library.

app.py serves the page (static/) and a JSON API; jobs.py runs one generation at a time from a queue;
work.py checks requests and runs them on the model; inputs.py reads values and uploaded images.
"""

from nextscale.serve.app import make_server
from nextscale.serve.work import ModelRunner

__all__ = ["make_server", "ModelRunner"]
