"""The Bybit-compatible exchange simulator, one module per concept.

``bars`` (bar files and aggregation), ``paths`` (intra-bar paths), ``tape`` (event tape), ``clock``,
``book`` (synthetic order book), ``markets`` (what is published when), ``hub`` (connection fan-out),
``server`` (WebSocket + REST server and its configuration) and ``faults`` (scheduled fault injection).
"""
