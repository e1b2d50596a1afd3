// The pod sandbox's process: it holds the pod's namespaces open and reaps zombies, as
// registry.k8s.io/pause does, and exits on SIGINT/SIGTERM. No registry serves that image
// here, so the node harness builds this one (e2e/cluster/build.sh, e2e/images/).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	children := make(chan os.Signal, 8)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-children:
			// As PID 1 of the pod's pid namespace (shareProcessNamespace) we inherit orphans.
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
