"""Scale-out on Ray (the optional ``bestshot[ray]`` extra): Ray Data for batch jobs, Ray Serve for serving.

Nothing here imports Ray at module import time: without the extra installed, bestshot works as before and
``--ray`` explains how to install it (:func:`bestshot.scale.cluster.require_ray`).
"""
