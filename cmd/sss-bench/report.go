package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// report reads the JSON lines of several runs and prints, for each
// scenario's figures, every target's median with its spread (min–max) and
// the ratios of the first target (sss) to the others.
func report(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	type key struct{ target, scenario string }
	runs := map[key][]map[string]float64{}
	var targets, scenarios []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var head struct{ Target, Scenario string }
		var fig map[string]any
		if json.Unmarshal(line, &head) != nil || json.Unmarshal(line, &fig) != nil {
			continue
		}
		nums := map[string]float64{}
		for k, v := range fig {
			if n, ok := v.(float64); ok {
				nums[k] = n
			}
		}
		nums["errors"] = nums["lost"] + nums["dup"] + nums["ooo"]
		k := key{head.Target, head.Scenario}
		runs[k] = append(runs[k], nums)
		if !slices.Contains(targets, head.Target) {
			targets = append(targets, head.Target)
		}
		if !slices.Contains(scenarios, head.Scenario) {
			scenarios = append(scenarios, head.Scenario)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	// sss first: the ratios are sss's to each other target.
	slices.SortStableFunc(targets, func(a, b string) int {
		return boolInt(b == "sss") - boolInt(a == "sss")
	})
	figures := map[string][]string{
		"fanout": {"cpu_us_per_op", "per_s", "p50_ms", "p99_ms", "errors", "client_cpu_s", "published_s", "elapsed_s"},
		"paced":  {"cpu_us_per_op", "p50_ms", "p99_ms", "errors"},
		"cross":  {"cpu_us_per_op", "per_s", "p99_ms", "redis_cpu_us_per_pub", "errors"},
		"ask":    {"cpu_us_per_op", "per_s", "p50_ms", "p99_ms", "client_cpu_s"},
		"idle":   {"rss_kb_per_conn", "goroutines_per_conn"},
	}
	fmt.Fprintf(w, "%-8s %-20s", "scenario", "figure")
	for _, t := range targets {
		fmt.Fprintf(w, " %-24s", t+" (median, min–max)")
	}
	for _, t := range targets[1:] {
		fmt.Fprintf(w, " %10s", targets[0]+"/"+t)
	}
	fmt.Fprintln(w)
	for _, s := range scenarios {
		for _, fig := range figures[s] {
			fmt.Fprintf(w, "%-8s %-20s", s, fig)
			med := make([]float64, len(targets))
			for i, t := range targets {
				vals := []float64{}
				for _, r := range runs[key{t, s}] {
					vals = append(vals, r[fig])
				}
				if len(vals) == 0 {
					fmt.Fprintf(w, " %-24s", "-")
					continue
				}
				slices.Sort(vals)
				med[i] = median(vals)
				fmt.Fprintf(w, " %-24s", fmt.Sprintf("%.4g (%.4g–%.4g) n=%d", med[i], vals[0], vals[len(vals)-1], len(vals)))
			}
			for i := range targets[1:] {
				if med[i+1] == 0 {
					fmt.Fprintf(w, " %10s", "-")
				} else {
					fmt.Fprintf(w, " %9.2f×", med[0]/med[i+1])
				}
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintln(w, strings.Repeat("-", 40))
	fmt.Fprintln(w, "cpu_us_per_op: server CPU per delivery or round trip; per_s: deliveries or round trips per second")
	return nil
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
