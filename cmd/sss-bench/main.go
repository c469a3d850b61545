// Command sss-bench is a load generator for sss and, for side-by-side
// comparisons (bench/), for a centrifuge server and a bare coder/websocket
// server. It speaks each target's wire protocol itself over
// github.com/coder/websocket (never through a client library, so that a
// client's costs don't hide the server's), and reads the server's CPU time
// from /proc by pid: CPU per operation is stable on a shared machine where
// rates are not.
//
// Scenarios:
//
//	fanout  N subscribers of one channel, M publications back to back:
//	        deliveries/s, latency p50/p90/p99/max, lost, duplicated, out
//	        of order, server CPU per delivery
//	paced   the same at a fixed rate (nothing to coalesce)
//	idle    N connections × 2 subscriptions: server RSS and goroutines per
//	        connection
//	ask     C clients asking "echo" back to back: round trips/s, p50/p99,
//	        server CPU per round trip
//	cross   fanout with the subscribers on another instance (-cross-url,
//	        -cross-pid) than the one publishing (-control), through a real
//	        scaler; CPU of the receiving instance
//
// A target serves WebSocket at -url and a control API at -control:
// POST /publish?channel=C&n=M&rate=R&size=S publishes M publications whose
// data is {"seq":i,"ts":unix nanos,"pad":"..."} (back to back when R is 0)
// and answers when done; GET /stats?gc=1 collects garbage, returns memory
// to the OS and answers {"goroutines":N}; ask "echo" returns its data.
// bench/ holds such targets; bench/run.sh runs every scenario on each.
//
// Every run is bounded in time (-timeout), talks to loopback only, raises
// its own open-file limit, prints one JSON line per scenario on stdout and
// a human summary on stderr.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type config struct {
	target   string
	proto    proto
	url      string
	control  string
	pid      int
	crossURL string
	crossPID int
	redisPID int

	subs     int
	msgs     int
	size     int
	rate     int
	duration time.Duration
	conns    int
	clients  int
	dialPar  int
	timeout  time.Duration
	settle   time.Duration
	wait     bool
}

func main() {
	var cfg config
	var protoName, scenarios, serverCmd, reportFile string
	var wait bool
	flag.StringVar(&protoName, "proto", "sss", "the target's protocol: sss, centrifuge or bare")
	flag.StringVar(&cfg.target, "target", "", "the target's name in the output (default: -proto)")
	flag.StringVar(&cfg.url, "url", "ws://127.0.0.1:8400/ws", "the target's WebSocket URL")
	flag.StringVar(&cfg.control, "control", "", "the target's control API (default: -url's host, over http)")
	flag.IntVar(&cfg.pid, "pid", 0, "the server's process id, for its CPU time and RSS")
	flag.StringVar(&serverCmd, "server", "", "start this command as the server (split on spaces), and stop it at the end")
	flag.StringVar(&scenarios, "scenario", "fanout,paced,ask,idle", "scenarios to run, comma separated: fanout, paced, idle, ask, cross")
	flag.IntVar(&cfg.subs, "subs", 1000, "subscribers (fanout, paced, cross)")
	flag.IntVar(&cfg.msgs, "msgs", 200, "publications (fanout, cross)")
	flag.IntVar(&cfg.size, "size", 64, "padding of each publication's data, in bytes")
	flag.IntVar(&cfg.rate, "rate", 10, "publications per second (paced)")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "how long paced and ask run")
	flag.IntVar(&cfg.conns, "conns", 2000, "connections (idle)")
	flag.IntVar(&cfg.clients, "clients", 100, "clients (ask)")
	flag.IntVar(&cfg.dialPar, "dial", 32, "connections opened at once")
	flag.DurationVar(&cfg.timeout, "timeout", 2*time.Minute, "bound of the whole run")
	flag.DurationVar(&cfg.settle, "settle", 2*time.Second, "wait before measuring idle memory")
	flag.StringVar(&cfg.crossURL, "cross-url", "", "WebSocket URL of the receiving instance (cross)")
	flag.IntVar(&cfg.crossPID, "cross-pid", 0, "process id of the receiving instance (cross)")
	flag.IntVar(&cfg.redisPID, "redis-pid", 0, "process id of Redis, to report its CPU per publication (cross)")
	flag.BoolVar(&wait, "wait", false, "wait until the target's control API answers")
	flag.StringVar(&reportFile, "report", "", "print medians, spread and ratios of the JSON lines in this file, and exit")
	flag.Parse()
	if reportFile != "" {
		if err := report(os.Stdout, reportFile); err != nil {
			fmt.Fprintln(os.Stderr, "sss-bench:", err)
			os.Exit(1)
		}
		return
	}
	cfg.wait = wait || serverCmd != ""
	if err := run(&cfg, protoName, scenarios, serverCmd); err != nil {
		fmt.Fprintln(os.Stderr, "sss-bench:", err)
		os.Exit(1)
	}
}

func run(cfg *config, protoName, scenarios, serverCmd string) error {
	p, err := protoFor(protoName)
	if err != nil {
		return err
	}
	cfg.proto = p
	if cfg.target == "" {
		cfg.target = p.name()
	}
	for _, u := range []string{cfg.url, cfg.crossURL, cfg.control} {
		if err := loopbackOnly(u); err != nil {
			return err
		}
	}
	if cfg.control == "" {
		u, _ := url.Parse(cfg.url)
		cfg.control = "http://" + u.Host
	}
	if n, err := raiseFileLimit(); err != nil {
		fmt.Fprintln(os.Stderr, "sss-bench: cannot raise the file limit:", err)
	} else if need := max(cfg.subs, cfg.conns, cfg.clients) + 64; uint64(need) > n {
		return fmt.Errorf("%d connections need more files than the limit allows (%d)", need, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	if serverCmd != "" {
		args := strings.Fields(serverCmd)
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}()
		cfg.pid = cmd.Process.Pid
	}
	if cfg.wait {
		if err := waitUp(ctx, cfg.control); err != nil {
			return err
		}
	}
	for _, name := range strings.Split(scenarios, ",") {
		var res *result
		var err error
		switch strings.TrimSpace(name) {
		case "fanout":
			res, err = fanout(ctx, cfg, cfg.url, cfg.pid, 0)
		case "paced":
			res, err = fanout(ctx, cfg, cfg.url, cfg.pid, cfg.rate)
		case "cross":
			if cfg.crossURL == "" || cfg.crossPID == 0 {
				return errors.New("cross needs -cross-url and -cross-pid")
			}
			res, err = fanout(ctx, cfg, cfg.crossURL, cfg.crossPID, 0)
		case "ask":
			res, err = ask(ctx, cfg)
		case "idle":
			res, err = idle(ctx, cfg)
		case "":
			continue
		default:
			return fmt.Errorf("unknown scenario %q", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		res.Target, res.Scenario = cfg.target, strings.TrimSpace(name)
		line, _ := json.Marshal(res)
		fmt.Println(string(line))
		fmt.Fprintln(os.Stderr, res.summary())
	}
	return nil
}

// loopbackOnly refuses any target but this machine's loopback.
func loopbackOnly(raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%s: only loopback targets are allowed", raw)
}
