#!/usr/bin/env python3
"""The least a TCP round can cost on this machine: the CPU time of moving a round's bytes
through one bare loopback socket (large sends and reads, no framing, no checksums, no
encoding), to set beside Benchmarks/tcp_overhead.sh's figures.

A fedsim round of the 2NN over TCP moves each selected client's model down and its update up
(797,032 bytes each way in fp32+raw): 16 MB for 10 clients, 160 MB for 100. Whatever the
transport does in user space, the kernel's copies and TCP processing of those bytes remain.

Usage: python3 Benchmarks/loopback_floor.py [megabytes-per-round] [repeats]
       (default 159.4, the 100-client round; 15.9 is the 10-client one)
"""
import os
import resource
import socket
import statistics
import sys
import threading

if any(a in ("-h", "--help") for a in sys.argv[1:]):
    print(__doc__.strip())
    sys.exit(0)
megabytes = float(sys.argv[1]) if len(sys.argv) > 1 else 159.4
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
total = int(megabytes * 1e6)
chunk = 1 << 20


def once():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def receive():
        connection, _ = listener.accept()
        buffer = memoryview(bytearray(chunk))
        got = 0
        while got < total:
            n = connection.recv_into(buffer, chunk)
            if n == 0:
                break
            got += n
        connection.close()

    thread = threading.Thread(target=receive)
    thread.start()
    sender = socket.create_connection(listener.getsockname())
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = bytes(chunk)
    before = resource.getrusage(resource.RUSAGE_SELF)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        sender.sendall(payload[:n])
        sent += n
    sender.close()
    thread.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    listener.close()
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


runs = [once() for _ in range(repeats)]
user = statistics.median(u for u, _ in runs)
system = statistics.median(s for _, s in runs)
print(f"{megabytes:.1f} MB through one loopback socket: {user + system:.3f} CPU-s "
      f"(user {user:.3f}, system {system:.3f}; median of {repeats}); {os.cpu_count()} cores")
