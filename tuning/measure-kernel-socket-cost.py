#!/usr/bin/env python3
"""Measure the kernel's memory cost of idle TCP connections on this host.

Usage: measure-kernel-socket-cost.py [PAIRS]   (default 8000; needs 2*PAIRS+50 open files)

Method: snapshot /proc/net/sockstat ("TCP: ... mem N", in pages), /proc/slabinfo (needs root;
skipped with a note otherwise) and /proc/meminfo (MemAvailable, Slab, SUnreclaim), then open PAIRS
idle loopback TCP connections to a listener in this same process, let the kernel settle, snapshot
again and divide the deltas.

Both ends of each loopback pair live on this host, so every pair costs two sockets (two struct
tcp_sock, two inodes, two dentries, two struct file). A ringcast server only holds the accepting
end; its clients are on other hosts. The per-server-connection figure is therefore half the
per-pair figure. The client end and the accepted end are not identical objects (the listener's
request sock is freed, the client end keeps its bind bucket) but they are within a few percent, so
halving is a fair estimate.

Idle means: handshake done, no payload. Receive and send queues are empty, so sockstat's "mem"
(pages charged to skbs) should barely move; the cost is in slab objects. A connection that holds
unread or unsent data costs that data on top (bounded by tcp_rmem/tcp_wmem).

Python stdlib only.
"""

import os
import socket
import sys
import time

SLABS = ["TCP", "TCPv6", "request_sock_TCP", "sock_inode_cache", "dentry", "filp",
         "eventpoll_epi", "eventpoll_pwq", "tcp_bind_bucket", "skbuff_head_cache",
         "kmalloc-2k", "kmalloc-1k", "kmalloc-512", "kmalloc-256", "kmalloc-192", "kmalloc-128",
         "kmalloc-64", "kmalloc-32", "selinux_file_security", "lsm_file_cache", "pid"]


def sockstat():
    out = {}
    with open("/proc/net/sockstat") as f:
        for line in f:
            proto, _, rest = line.partition(":")
            toks = rest.split()
            for k, v in zip(toks[::2], toks[1::2]):
                out[f"{proto}.{k}"] = int(v)
    return out


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = int(v.split()[0]) * 1024  # kB -> bytes
    return out


def slabinfo():
    """name -> (active_objs, num_objs, objsize, total_bytes incl. partial slabs); None if unreadable."""
    try:
        with open("/proc/slabinfo") as f:
            lines = f.readlines()[2:]
    except OSError:
        return None
    out = {}
    for line in lines:
        t = line.split()
        name, active, num, size, objperslab, pagesperslab = t[0], *map(int, t[1:6])
        slabs = int(t[t.index("slabdata") + 2])  # num_slabs
        out[name] = (active, num, size, slabs * pagesperslab * os.sysconf("SC_PAGE_SIZE"))
    return out


def snapshot():
    time.sleep(1.0)  # let deferred frees (RCU) run
    return sockstat(), meminfo(), slabinfo()


def main():
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    page = os.sysconf("SC_PAGE_SIZE")
    before = snapshot()

    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    addr = lst.getsockname()
    clients, servers = [], []
    for i in range(pairs):
        c = socket.create_connection(addr)
        clients.append(c)
        servers.append(lst.accept()[0])
    after = snapshot()

    ss0, mi0, sl0 = before
    ss1, mi1, sl1 = after
    sockets = 2 * pairs
    print(f"kernel {os.uname().release}, page size {page} B, {pairs} idle loopback pairs "
          f"= {sockets} sockets, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"sockstat TCP inuse {ss0.get('TCP.inuse')} -> {ss1.get('TCP.inuse')}, "
          f"mem {ss0.get('TCP.mem')} -> {ss1.get('TCP.mem')} pages "
          f"(delta {(ss1.get('TCP.mem', 0) - ss0.get('TCP.mem', 0)) * page} B)")

    slab_obj_total = 0
    if sl0 is None or sl1 is None:
        print("slabinfo: not readable (run as root for the per-cache breakdown)")
    else:
        print(f"{'slab cache':<24}{'objs +':>10}{'objsize':>9}{'bytes/socket':>14}")
        for name in SLABS:
            if name not in sl0 or name not in sl1:
                continue
            d_obj = sl1[name][0] - sl0[name][0]
            if d_obj <= 0:
                continue
            b = d_obj * sl1[name][2]
            slab_obj_total += b
            print(f"{name:<24}{d_obj:>10}{sl1[name][2]:>9}{b / sockets:>14.0f}")
        print(f"{'sum of listed objects':<43}{slab_obj_total / sockets:>14.0f}")

    d_slab = mi1["Slab"] - mi0["Slab"]
    d_avail = mi0["MemAvailable"] - mi1["MemAvailable"]
    d_free = mi0["MemFree"] - mi1["MemFree"]
    print(f"meminfo Slab delta       {d_slab:>12} B = {d_slab / sockets:8.0f} B/socket")
    print(f"meminfo MemFree drop     {d_free:>12} B = {d_free / sockets:8.0f} B/socket")
    print(f"meminfo MemAvailable drop{d_avail:>12} B = {d_avail / sockets:8.0f} B/socket")
    print()
    print(f"per server-side connection (half a pair): slab {d_slab / sockets:.0f} B, "
          f"MemFree {d_free / sockets:.0f} B")

    for s in clients + servers:
        s.close()
    lst.close()


if __name__ == "__main__":
    main()
