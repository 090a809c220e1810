"""The application layer: the ``bitmos`` command and the runs that join the areas.

``demo`` (model -> golden -> compiler -> simulator), ``verify`` (simulator vs RTL) and ``estimate``
(compiler + timing-only simulator on model shapes) are the only code allowed to import several areas;
the contract in :mod:`bitmos` imports none of them, and no area imports this layer.
"""
