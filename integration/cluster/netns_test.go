//go:build e2e

package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// netnsPath is where `ip netns add` mounts a namespace.
func netnsPath(name string) string { return "/var/run/netns/" + name }

// runPrefix starts the name of every namespace and link this test binary
// creates: "thw", its pid and a "p" that ends the pid (a network's id
// follows), so that a later run can tell leftovers of a dead run from
// another live run's.
var runPrefix = fmt.Sprintf("thw%dp", os.Getpid())

// networks counts the networks this run created, to name each uniquely.
var networks atomic.Int32

// leftoverName matches the names this package gives: thw<pid><net id>...
var leftoverName = regexp.MustCompile(`^thw(\d+)`)

// removeLeftovers deletes namespaces and links that an earlier run of this
// package left behind (its process killed before its cleanups ran), and any
// of this run's prefix. A name whose pid is still alive belongs to another
// run and is left alone.
func removeLeftovers(logf func(string, ...any)) {
	stale := func(name string) bool {
		m := leftoverName.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		if strings.HasPrefix(name, runPrefix) {
			return true
		}
		pid, _ := strconv.Atoi(m[1])
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return os.IsNotExist(err)
	}
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for line := range strings.SplitSeq(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && stale(f[0]) {
				logf("removing leftover network namespace %s", f[0])
				_ = exec.Command("ip", "netns", "del", f[0]).Run()
			}
		}
	}
	for _, l := range linkNames() {
		if stale(l) {
			logf("removing leftover link %s", l)
			_ = exec.Command("ip", "link", "del", l).Run()
		}
	}
}

// linkNames lists the root namespace's interfaces.
func linkNames() []string {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	return names
}

// host is one namespace on the test network: a node or the registry.
type host struct {
	name  string // namespace name
	ip    string // its address on the bridge
	hveth string // the veth end on the bridge, in the root namespace
}

// network is a bridge in the root namespace with hosts attached by veth
// pairs, every link shaped to rate bits/s in both directions.
type network struct {
	prefix string
	subnet int    // the network is 10.<subnet>.0.0/16
	bridge string // in the root namespace
	rootIP string // the root namespace's address on the bridge
	rate   int64  // bits per second, each direction of each link
	// ackPriority: see harnessConfig.AckPriority.
	ackPriority bool
	registry    *host
	nodes       []*host
}

// newNetwork creates the registry's namespace and n nodes' namespaces, to
// be shaped at rate bits/s by shape. Everything is removed when the test
// ends.
func newNetwork(t *testing.T, n int, rate int64) *network {
	t.Helper()
	id := networks.Add(1) - 1
	nw := &network{
		prefix: runPrefix + strconv.FormatInt(int64(id%36), 36),
		rate:   rate,
	}
	nw.bridge = nw.prefix + "br"
	nw.subnet = freeSubnet(t)
	nw.rootIP = nw.ip(0, 1)
	t.Cleanup(func() { nw.teardown(t) })

	nw.must(t, "ip", "link", "add", nw.bridge, "type", "bridge")
	nw.must(t, "ip", "addr", "add", nw.rootIP+"/16", "dev", nw.bridge)
	nw.must(t, "ip", "link", "set", nw.bridge, "up")
	nw.registry = nw.addHost(t, nw.prefix+"reg", nw.prefix+"hr", nw.ip(0, 2))
	for i := range n {
		nw.nodes = append(nw.nodes, nw.addHost(t, fmt.Sprintf("%sn%d", nw.prefix, i), fmt.Sprintf("%sh%d", nw.prefix, i), nw.ip(1, 1+i)))
	}
	t.Logf("network %s: bridge %s, 10.%d.0.0/16, root %s, registry %s, %d nodes %s..%s, links to be shaped to %s each way",
		nw.prefix, nw.bridge, nw.subnet, nw.rootIP, nw.registry.ip, n, nw.nodes[0].ip, nw.nodes[n-1].ip, fmtRate(rate))
	return nw
}

func (nw *network) ip(a, b int) string { return fmt.Sprintf("10.%d.%d.%d", nw.subnet, a, b) }

// freeSubnet picks x such that no address or route of the root namespace is
// in 10.x.0.0/16.
func freeSubnet(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("ip", "-o", "addr").Output()
	if err != nil {
		t.Fatal(err)
	}
	routes, err := exec.Command("ip", "route").Output()
	if err != nil {
		t.Fatal(err)
	}
	used := string(out) + string(routes)
	for x := 201 + os.Getpid()%40; x < 255; x++ {
		if !strings.Contains(used, fmt.Sprintf(" 10.%d.", x)) {
			return x
		}
	}
	t.Fatal("no free 10.x.0.0/16 for the test network")
	return 0
}

func (nw *network) addHost(t *testing.T, name, hveth, ip string) *host {
	t.Helper()
	h := &host{name: name, ip: ip, hveth: hveth}
	nw.must(t, "ip", "netns", "add", name)
	nw.must(t, "ip", "link", "add", hveth, "type", "veth", "peer", "name", "eth0", "netns", name)
	nw.must(t, "ip", "link", "set", hveth, "master", nw.bridge, "up")
	nw.must(t, "ip", "-n", name, "addr", "add", ip+"/16", "dev", "eth0")
	nw.must(t, "ip", "-n", name, "link", "set", "eth0", "up")
	nw.must(t, "ip", "-n", name, "link", "set", "lo", "up")
	return h
}

// shape puts a token bucket at the network's rate on both ends of every
// host's veth: egress of the namespace's end is the host's uplink, egress of
// the bridge's end its downlink.
//
// ACKs share the bucket's FIFO with bulk data: a saturated uplink delays the
// ACKs of the host's downloads by up to the queue's 50 ms. (The kernel of
// the machines this runs on has no fq_codel, sfq or netem; only tbf, htb and
// the FIFOs.)
func (nw *network) shape(t *testing.T) {
	t.Helper()
	for _, h := range append([]*host{nw.registry}, nw.nodes...) {
		nw.must(t, append([]string{"tc", "-n", h.name, "qdisc", "add", "dev", "eth0", "root", "handle", "1:"}, tbf(nw.rate)...)...)
		nw.must(t, append([]string{"tc", "qdisc", "add", "dev", h.hveth, "root", "handle", "1:"}, tbf(nw.rate)...)...)
		if nw.ackPriority {
			nw.prioritizeAcks(t, []string{"tc", "-n", h.name}, "eth0")
			nw.prioritizeAcks(t, []string{"tc"}, h.hveth)
		}
	}
}

// prioritizeAcks replaces the FIFO inside a link's tbf by two FIFOs of the
// same total size, the first for IP packets under 128 bytes (pure ACKs)
// served ahead of the second: the shaping (tbf) stays as it is; only the
// order of the queue changes.
func (nw *network) prioritizeAcks(t *testing.T, tc []string, dev string) {
	t.Helper()
	limit := strconv.FormatInt(nw.rate/8/20+max(256<<10, nw.rate/8/500), 10) // tbf's: 50 ms + burst
	for _, c := range [][]string{
		{"qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "htb", "default", "20"},
		{"class", "add", "dev", dev, "parent", "10:", "classid", "10:10", "htb", "rate", "10gbit", "prio", "0"},
		{"class", "add", "dev", dev, "parent", "10:", "classid", "10:20", "htb", "rate", "10gbit", "prio", "1"},
		{"qdisc", "add", "dev", dev, "parent", "10:10", "bfifo", "limit", "65536"},
		{"qdisc", "add", "dev", dev, "parent", "10:20", "bfifo", "limit", limit},
		// IP total length (bytes 2-3 of the header) below 128.
		{"filter", "add", "dev", dev, "parent", "10:", "protocol", "ip", "prio", "1", "u32", "match", "u16", "0", "0xff80", "at", "2", "flowid", "10:10"},
	} {
		nw.must(t, append(append([]string{}, tc...), c...)...)
	}
}

// tbf is a token bucket at rate bits/s: a burst of at least 256 KiB (more
// than a GSO segment, and 2 ms at 1 Gbit/s) and at most 50 ms of queue.
func tbf(rate int64) []string {
	burst := max(256<<10, rate/8/500)
	return []string{"tbf", "rate", fmt.Sprintf("%dbit", rate), "burst", strconv.FormatInt(burst, 10), "latency", "50ms"}
}

func (nw *network) must(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// teardown removes the veth pairs (deleting one end deletes both, at once;
// a namespace's own devices go asynchronously, sometimes seconds after it),
// the namespaces and the bridge, and checks that no link of this network is
// left.
func (nw *network) teardown(t *testing.T) {
	hosts := append([]*host{nw.registry}, nw.nodes...)
	for _, h := range hosts {
		if h == nil {
			continue
		}
		if out, err := exec.Command("ip", "link", "del", h.hveth).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			t.Errorf("ip link del %s: %v %s", h.hveth, err, out)
		}
		if out, err := exec.Command("ip", "netns", "del", h.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", h.name, err, out)
		}
	}
	if out, err := exec.Command("ip", "link", "del", nw.bridge).CombinedOutput(); err != nil {
		t.Errorf("ip link del %s: %v %s", nw.bridge, err, out)
	}
	err := poll(30*time.Second, 100*time.Millisecond, func() error {
		var left []string
		for _, l := range linkNames() {
			if strings.HasPrefix(l, nw.prefix) {
				left = append(left, l)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("links left: %s", strings.Join(left, ", "))
		}
		return nil
	})
	if err != nil {
		t.Errorf("network %s: %v", nw.prefix, err)
	}
}

// txBytes is how many bytes h has sent so far: what the bridge's end of its
// veth received (frames, so TCP/IP and Ethernet headers included).
func (h *host) txBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/sys/class/net/" + h.hveth + "/statistics/rx_bytes")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// inNetns runs f on an OS thread switched to namespace name, so that the
// sockets f creates belong to it. The thread is switched back afterwards; if
// that fails it stays locked and dies with the goroutine.
func inNetns(name string, f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open(netnsPath(name))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := setns(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", name, err)
	}
	ferr := f()
	if err := setns(orig); err != nil {
		return fmt.Errorf("setns back from %s: %w", name, err) // thread stays locked
	}
	runtime.UnlockOSThread()
	return ferr
}

func setns(f *os.File) error {
	return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
}

// measureLink sends size bytes from host from to host to over TCP and
// returns the rate the receiver saw, in bits/s, from first byte to last.
func measureLink(ctx context.Context, from, to *host, size int64) (float64, error) {
	var ln net.Listener
	if err := inNetns(to.name, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(to.ip, "0"))
		return err
	}); err != nil {
		return 0, err
	}
	defer ln.Close()
	var conn net.Conn
	if err := inNetns(from.name, func() (err error) {
		conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
		return err
	}); err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() {
		defer conn.Close()
		buf := make([]byte, 1<<20)
		for left := size; left > 0; {
			n, err := conn.Write(buf[:min(left, int64(len(buf)))])
			if err != nil {
				werr = err
				return
			}
			left -= int64(n)
		}
	})
	defer wg.Wait()
	rc, err := ln.Accept()
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	if d, ok := ctx.Deadline(); ok {
		rc.SetDeadline(d)
	}
	first := make([]byte, 1)
	if _, err := io.ReadFull(rc, first); err != nil {
		return 0, err
	}
	start := time.Now()
	n, err := io.Copy(io.Discard, rc)
	if err != nil {
		return 0, err
	}
	el := time.Since(start)
	wg.Wait()
	if werr != nil {
		return 0, werr
	}
	return float64(n) * 8 / el.Seconds(), nil
}

// checkShaping measures, concurrently, node 0's uplink (to the registry) and
// its downlink (from the registry), and logs both; it does not assert, the
// numbers are for the reader of the test log.
func (nw *network) checkShaping(t *testing.T) {
	t.Helper()
	size := max(nw.rate/8, 4<<20) // about a second's worth
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var up, down float64
	var upErr, downErr error
	var wg sync.WaitGroup
	wg.Go(func() { up, upErr = measureLink(ctx, nw.nodes[0], nw.registry, size) })
	wg.Go(func() { down, downErr = measureLink(ctx, nw.registry, nw.nodes[0], size) })
	wg.Wait()
	if upErr != nil || downErr != nil {
		t.Fatalf("measure the shaped links: up: %v, down: %v", upErr, downErr)
	}
	t.Logf("shaping check (%d bytes each way at once): node0 up %s, down %s; configured %s", size, fmtRate(int64(up)), fmtRate(int64(down)), fmtRate(nw.rate))
}

func fmtRate(bits int64) string {
	switch {
	case bits >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s", float64(bits)/1e9)
	default:
		return fmt.Sprintf("%.1f Mbit/s", float64(bits)/1e6)
	}
}

// countSYNs makes h's firewall count the TCP connections it accepts on port
// (a rule without a target only counts).
func countSYNs(t *testing.T, h *host, port string) {
	t.Helper()
	if out, err := exec.Command("nsenter", "--net="+netnsPath(h.name), "iptables", "-A", "INPUT", "-p", "tcp", "--dport", port, "--syn").CombinedOutput(); err != nil {
		t.Fatalf("count SYNs on %s: %v\n%s", h.name, err, out)
	}
}

// synCount reads and zeroes the counter of countSYNs.
func synCount(h *host, port string) (int64, error) {
	out, err := exec.Command("nsenter", "--net="+netnsPath(h.name), "iptables", "-L", "INPUT", "-v", "-x", "-n", "-Z").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && strings.Contains(line, "dpt:"+port) {
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no SYN counter for port %s in %s", port, h.name)
}

// blockPeers drops, inside h's namespace, every packet to and from the
// addresses given (the other nodes), leaving the registry reachable: a
// partition from the cluster that the kernel does not report, so only
// timeouts reveal it.
func blockPeers(t *testing.T, h *host, peers []string) {
	t.Helper()
	// Heal before the daemons stop (cleanups run last in, first out), so
	// that their connections close instead of lingering as orphans that
	// keep the namespace alive.
	t.Cleanup(func() {
		if out, err := exec.Command("nsenter", "--net="+netnsPath(h.name), "iptables", "-F").CombinedOutput(); err != nil {
			t.Errorf("heal %s: %v\n%s", h.name, err, out)
		}
	})
	for _, ip := range peers {
		for _, rule := range [][]string{{"OUTPUT", "-d", ip}, {"INPUT", "-s", ip}} {
			args := append([]string{"--net=" + netnsPath(h.name), "iptables", "-A"}, append(rule, "-j", "DROP")...)
			if out, err := exec.Command("nsenter", args...).CombinedOutput(); err != nil {
				t.Fatalf("nsenter %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	}
}
