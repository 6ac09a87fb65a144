"""SpotServe: serving on preemptible instances.

The controller's decisions (`optimizer`, `placement`/`migration`, `recovery`, `controller`) are
kept apart from how they are carried out; `simulator` is one executor (a trace-driven
discrete-event simulation), a live Ray executor is another to come.
"""
