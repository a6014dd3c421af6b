"""Tunnels over a long path: iperf3 through `rejoin server` / `rejoin client`
(each with its defaults), and through bore if it is installed, across a
path that delays every packet DELAY_MS each way, beside direct TCP over the
same path, in one run.

usage: python3 benches/long_path.py REJOIN [REJOIN_BASELINE]
env:   DELAY_MS=25  one-way delay (the round trip is twice it)
       SECONDS=10   each iperf3 run (the first 3 s of slow start left out)
       ROUNDS=1     the paths measured in turn this many times
       BORE=…       bore's binary (default: where benches/compare.sh installs it)

Needs root, `ip`, /dev/net/tun and iperf3: the path is two TUN devices, one
here and one in a network namespace `rejoin-lp`, with this script forwarding
the packets between them after the delay (the kernel's netem is not on every
machine). The server side (rejoin server, the visitor's iperf3 client) runs
in the namespace at 10.77.0.2; the client side (rejoin client, the service,
an iperf3 server on 127.0.0.1) runs here at 10.77.0.1. The forwarder is one
Python process: it moved about 540 Mbit/s of direct TCP at 50 ms on the
2-core machine, so figures near that are the forwarder's, not the tunnel's.
"""
import collections, fcntl, os, re, select, shutil, struct, subprocess, sys, tempfile, time

NS = "rejoin-lp"
HERE, THERE = "10.77.0.1", "10.77.0.2"


def forward(delay):
    """Runs the path until killed: packets between the two TUNs, delayed."""
    def tun(name):
        fd = os.open("/dev/net/tun", os.O_RDWR)
        # TUNSETIFF with IFF_TUN | IFF_NO_PI: raw IP packets.
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0001 | 0x1000))
        os.set_blocking(fd, False)
        return fd

    def sh(cmd):
        subprocess.run(cmd, shell=True, check=True)

    a, b = tun("rlp0"), tun("rlp1")
    sh(f"ip link set rlp1 netns {NS}")
    sh(f"ip addr add {HERE} peer {THERE} dev rlp0 && ip link set rlp0 mtu 65000 up")
    sh(f"ip netns exec {NS} sh -c 'ip addr add {THERE} peer {HERE} dev rlp1 && "
       f"ip link set rlp1 mtu 65000 up && ip link set lo up'")
    print("up", flush=True)
    queue = collections.deque()  # (due, to, packet): one delay, so in order
    other = {a: b, b: a}
    while True:
        wait = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
        ready, _, _ = select.select([a, b], [], [], wait)
        now = time.monotonic()
        for fd in ready:
            for _ in range(64):
                try:
                    packet = os.read(fd, 70000)
                except BlockingIOError:
                    break
                queue.append((now + delay, other[fd], packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, fd, packet = queue.popleft()
            try:
                os.write(fd, packet)
            except OSError:
                pass  # a full TUN queue drops it, as a router would


def wait_for(path, pattern, proc, what, limit=10.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"{what} exited; its log: {path}")
        m = re.search(pattern, open(path, errors="replace").read())
        if m:
            return m.group(1)
        time.sleep(0.1)
    sys.exit(f"{what} did not start in {limit:.0f} s; its log: {path}")


class Run:
    def __init__(self, logs):
        self.logs, self.procs = logs, []

    def start(self, name, argv, ns=False):
        log = os.path.join(self.logs, re.sub(r"[^A-Za-z0-9.-]+", "_", name) + ".log")
        if ns:
            argv = ["ip", "netns", "exec", NS] + argv
        p = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p, log

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []


def iperf(port, reverse, seconds, across=False):
    """Mbit/s the visitor received or sent: from the namespace to a public
    port there, or (`across`) from here across the path."""
    where = [] if across else ["ip", "netns", "exec", NS]
    argv = where + ["iperf3", "-c", THERE, "-p", str(port),
                    "-t", str(seconds), "-O", "3"] + (["-R"] if reverse else [])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    for line in out.splitlines():
        if line.rstrip().endswith("receiver"):
            value, unit = line.split()[-3], line.split()[-2]
            return float(value) * {"Gbits/sec": 1000, "Mbits/sec": 1, "Kbits/sec": 0.001}[unit]
    return float("nan")


def measure(run, name, seconds, results):
    port = {"service": 15411}
    if name == "direct TCP":
        run.start("iperf-direct", ["iperf3", "-s", "-p", "15410", "-B", THERE], ns=True)
        time.sleep(0.5)
        up = iperf(15410, False, seconds, across=True)
        down = iperf(15410, True, seconds, across=True)
    else:
        run.start("iperf-" + name, ["iperf3", "-s", "-p", str(port["service"]), "-B", "127.0.0.1"])
        if name.startswith("bore"):
            bin_ = name.split(" ", 1)[1]
            run.start("bore-server", [bin_, "server", "--bind-addr", THERE], ns=True)
            time.sleep(0.5)
            p, log = run.start("bore-local", [bin_, "local", str(port["service"]),
                                              "--local-host", "127.0.0.1", "--to", THERE])
            public = wait_for(log, r"listening at [0-9.]+:(\d+)", p, "bore local")
        else:
            bin_ = name.split(" ", 1)[1]
            token = "t0ken-for-the-long-path"
            p, log = run.start("rejoin-server", [bin_, "server", "--listen", THERE + ":0",
                                                 "--token", token], ns=True)
            addr = wait_for(log, r"listening on (\S+)", p, "rejoin server")
            p, log = run.start("rejoin-client", [bin_, "client", "--server", addr, "--token", token,
                                                 "--tcp", f"127.0.0.1:{port['service']}"])
            public = wait_for(log, r"published at \S+:(\d+)", p, "rejoin client")
        time.sleep(0.5)
        up = iperf(int(public), False, seconds)
        down = iperf(int(public), True, seconds)
    run.stop()
    results.setdefault(name, []).append((up, down))
    print(f"  {name}: visitor → service {up:.0f} Mbit/s, service → visitor {down:.0f} Mbit/s", flush=True)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "--forward":
        forward(float(sys.argv[2]) / 1000)
        return
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or not shutil.which("ip"):
        sys.exit("needs root, /dev/net/tun and ip (iproute2)")
    if not shutil.which("iperf3"):
        sys.exit("needs iperf3")
    delay = float(os.environ.get("DELAY_MS", 25))
    seconds = int(os.environ.get("SECONDS", 10))
    rounds = int(os.environ.get("ROUNDS", 1))
    paths = ["direct TCP"] + [f"rejoin {os.path.abspath(b)}" for b in sys.argv[1:]]
    bore = os.environ.get("BORE") or os.path.expanduser(
        os.path.join(os.environ.get("REJOIN_BENCH_CACHE", "~/.cache/rejoin-bench"), "bin/bore"))
    if os.path.exists(bore):
        paths.append(f"bore {bore}")
    else:
        print(f"bore not found at {bore} (benches/compare.sh installs it): left out")
    logs = tempfile.mkdtemp(prefix="rejoin-long-path.")
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    fwd = subprocess.Popen([sys.executable, __file__, "--forward", str(delay)],
                           stdout=subprocess.PIPE, text=True)
    run = Run(logs)
    results = {}
    try:
        if fwd.stdout.readline().strip() != "up":
            sys.exit("the forwarder did not come up")
        print(f"round trip {2 * delay:.0f} ms, {seconds} s per run, logs in {logs}")
        for r in range(rounds):
            print(f"round {r + 1}")
            for name in paths:
                measure(run, name, seconds, results)
    finally:
        run.stop()
        fwd.kill()
        fwd.wait()
        subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    print(f"\nmedians over {rounds} round(s), Mbit/s, visitor → service / service → visitor:")
    for name, runs in results.items():
        ups = sorted(u for u, _ in runs)
        downs = sorted(d for _, d in runs)
        print(f"  {name}: {ups[len(ups) // 2]:.0f} / {downs[len(downs) // 2]:.0f}")


if __name__ == "__main__":
    main()
