package sss_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The whole programs README.md shows (Go blocks that start with "package
// main") compile as written, against this module.
func TestREADMEPrograms(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles programs")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	var programs []string
	for _, block := range strings.Split(string(readme), "```go\n")[1:] {
		code, _, _ := strings.Cut(block, "```")
		if strings.HasPrefix(code, "package main\n") {
			programs = append(programs, code)
		}
	}
	if len(programs) < 2 {
		t.Fatalf("README shows %d whole programs, want the server and the client", len(programs))
	}
	// Each program goes in a directory of this module that exists only in
	// the build's overlay, so nothing is written into the tree.
	tmp := t.TempDir()
	overlay := map[string]map[string]string{"Replace": {}}
	var pkgs []string
	for i, code := range programs {
		src := filepath.Join(tmp, strconv.Itoa(i)+".go")
		if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
			t.Fatal(err)
		}
		dir := "readme_program_" + strconv.Itoa(i)
		overlay["Replace"][filepath.Join(root, dir, "main.go")] = src
		pkgs = append(pkgs, "./"+dir)
	}
	ov, _ := json.Marshal(overlay)
	ovPath := filepath.Join(tmp, "overlay.json")
	if err := os.WriteFile(ovPath, ov, 0o644); err != nil {
		t.Fatal(err)
	}
	for i, pkg := range pkgs {
		cmd := exec.Command(goBin, "build", "-overlay", ovPath, "-o", filepath.Join(tmp, "bin"+strconv.Itoa(i)), pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("README program %d does not compile: %v\n%s", i+1, err, out)
		}
	}
}
