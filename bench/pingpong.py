"""Ping-pong between two ranks, as `python -m mpi4py.bench pingpong` does it (buffer Send and
Recv of bytearrays, every power of two from MIN to MAX), but timing every round trip and
reporting the median as well as the mean: on a busy machine a few round trips that wait for a
CPU make the mean (all that mpi4py.bench prints) a measure of the load rather than of MPI.

    mpirun -n 2 python pingpong.py [-m MIN] [-n MAX] [-l LOOP] [--loop-huge LOOP]

Rank 0 prints one line per size: bytes, MB/s from the median round trip, MB/s from the mean.
"""

import argparse
import statistics

from mpi4py import MPI


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--min-size", type=int, default=1 << 12)
    parser.add_argument("-n", "--max-size", type=int, default=1 << 22)
    parser.add_argument("-s", "--skip", type=int, default=10, help="warm-up round trips")
    parser.add_argument("-l", "--loop", type=int, default=1000, help="timed round trips")
    parser.add_argument("--loop-huge", type=int, default=100, help="timed round trips > 1 MiB")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    assert comm.size == 2, "run with two ranks"
    other, wtime = 1 - comm.rank, MPI.Wtime
    size = args.min_size
    if comm.rank == 0:
        print("# bytes  MB/s (median)  MB/s (mean)", flush=True)
    while size <= args.max_size:
        loop = args.loop_huge if size > 1 << 20 else args.loop
        send = [bytearray(size), size, MPI.BYTE]
        recv = [bytearray(size), size, MPI.BYTE]
        times = []
        comm.Barrier()
        for i in range(args.skip + loop):
            started = wtime()
            if comm.rank == 0:
                comm.Send(send, other, 0)
                comm.Recv(recv, other, 0)
            else:
                comm.Recv(recv, other, 0)
                comm.Send(send, other, 0)
            if i >= args.skip:
                times.append((wtime() - started) / 2)
        if comm.rank == 0:
            median, mean = statistics.median(times), statistics.fmean(times)
            print(f"{size:10d} {size / median / 1e6:12.2f} {size / mean / 1e6:12.2f}", flush=True)
        size *= 2


if __name__ == "__main__":
    main()
