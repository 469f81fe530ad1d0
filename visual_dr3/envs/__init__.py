"""Tasks, environment construction and scripted policies.

``tasks`` is light (no robosuite import); ``make`` (``make_env``, ``env_args_for``, ``render_settings``) and
``scripted`` (``make_policy``) import robosuite/mujoco, which takes a couple of seconds: import them where
they are used.
"""
