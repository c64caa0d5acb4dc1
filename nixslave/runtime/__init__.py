"""Running artifacts: the accelerator probe, qemu and nspawn runners, fleets.

Kept apart from the build pipeline (spec, root, plan, materialize) so that
building an image never imports anything that starts a process.
"""
