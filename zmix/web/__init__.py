"""The live web view of a running network (docs/monitoring.md, "The web view").

:mod:`zmix.web.pages` holds the pure parts (the topology graph, server-sent event framing, the
Host check, the address syntax); :mod:`zmix.web.server` serves them over HTTP from a thread of
``zmix-up``. The page itself (``static/``) is plain HTML, CSS and JavaScript shipped with the
package: no build step, nothing fetched from elsewhere.
"""
