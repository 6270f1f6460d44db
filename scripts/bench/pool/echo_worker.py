# A Python worker for scripts/bench/pool.lua: answers "echo" with its args.
# The pool puts sprun's python/ directory on PYTHONPATH.
import sprun_worker


@sprun_worker.handler("echo")
def echo(args):
    return args


sprun_worker.run()
