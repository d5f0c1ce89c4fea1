"""``digipat monitor``: drift monitoring of incoming CT scans.

:mod:`workflows.monitor.cli` (``monitor baseline`` / ``monitor check``) composes the statistics of
:mod:`pipeline.drift` with the HTML report of :mod:`workflows.monitor.report`.
"""
