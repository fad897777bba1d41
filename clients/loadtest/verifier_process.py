"""The verifier's child process (see verifier.ProcessVerifier): requests on stdin, replies on stdout."""

import os
from multiprocessing.connection import Connection

from clients.loadtest.verifier import serve

if __name__ == "__main__":
    serve(Connection(os.dup(0), writable=False), Connection(os.dup(1), readable=False))
