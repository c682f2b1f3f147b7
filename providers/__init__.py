"""Everything cloud- or site-specific, behind small interfaces.

`providers` imports neither `serve_apps` nor `cluster`: they import it.
"""
