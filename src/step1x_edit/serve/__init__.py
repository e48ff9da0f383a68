"""Serving: the edit service (service.py) behind the HTTP API (http.py) and the Gradio web UI (webui.py)."""
