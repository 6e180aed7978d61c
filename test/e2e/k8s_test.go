package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/mender-mtls/mtls-agent/internal/fleet"
)

type k8sJob struct {
	Kind string `yaml:"kind"`
	Spec struct {
		CompletionMode string `yaml:"completionMode"`
		Completions    int    `yaml:"completions"`
		Parallelism    int    `yaml:"parallelism"`
		Template       struct {
			Spec struct {
				InitContainers []k8sContainer `yaml:"initContainers"`
				Containers     []k8sContainer `yaml:"containers"`
				Volumes        []struct {
					Name   string `yaml:"name"`
					Secret *struct {
						SecretName string `yaml:"secretName"`
					} `yaml:"secret"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sContainer struct {
	Name string   `yaml:"name"`
	Args []string `yaml:"args"`
	Env  []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

// The Indexed Job's shard wiring: one shard per pod, N everywhere the same,
// every pod's report kept under its own name, the CA from a Secret, the
// arguments accepted by `simulator run`, and the shards partitioning the
// fleet exactly.
func TestK8sIndexedJobShardWiring(t *testing.T) {
	data, err := os.ReadFile("../../deploy/k8s/fleet-job.yaml")
	require.NoError(t, err)
	var job k8sJob
	require.NoError(t, yaml.Unmarshal(data, &job))
	require.Equal(t, "Job", job.Kind)
	assert.Equal(t, "Indexed", job.Spec.CompletionMode, "JOB_COMPLETION_INDEX exists only in Indexed Jobs")
	n := job.Spec.Completions
	require.Positive(t, n)
	assert.Equal(t, n, job.Spec.Parallelism, "all shards run at once")

	require.Len(t, job.Spec.Template.Spec.Containers, 1)
	c := job.Spec.Template.Spec.Containers[0]
	require.NotEmpty(t, c.Args)
	require.Equal(t, "run", c.Args[0])
	args := map[string]string{}
	for _, a := range c.Args[1:] {
		k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		require.True(t, ok, "argument %q: use --flag=value", a)
		args[k] = v
	}
	assert.Equal(t, fmt.Sprintf("$(JOB_COMPLETION_INDEX)/%d", n), args["shard"], "--shard i/N with N = completions")
	assert.Contains(t, args["report"], "$(JOB_COMPLETION_INDEX)", "each pod keeps its own report")

	// The CA comes from a Secret, copied into the writable --pki-dir.
	secrets := map[string]string{}
	for _, v := range job.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			secrets[v.Name] = v.Secret.SecretName
		}
	}
	require.NotEmpty(t, secrets)
	var caFromSecret bool
	for _, ic := range job.Spec.Template.Spec.InitContainers {
		for _, m := range ic.VolumeMounts {
			if _, ok := secrets[m.Name]; ok {
				caFromSecret = true
			}
		}
	}
	assert.True(t, caFromSecret, "an init container copies the CA Secret into --pki-dir")

	// Every flag is one `simulator run` knows.
	help, _ := exec.Command(bins.simulator, "run", "--help").CombinedOutput()
	for k := range args {
		assert.Regexp(t, regexp.MustCompile(`(?m)^\s+--`+regexp.QuoteMeta(k)+`\b`), string(help), "simulator run has no --%s", k)
	}

	// Substitute the pod environment: the N shards partition the fleet.
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	expand := func(s string) string { // Kubernetes' $(VAR) syntax
		return regexp.MustCompile(`\$\((\w+)\)`).ReplaceAllStringFunc(s, func(m string) string { return env[m[2:len(m)-1]] })
	}
	count, err := strconv.Atoi(expand(args["count"]))
	require.NoError(t, err, "--count resolves to a number")
	next := 0
	for i := range n {
		sh, err := fleet.ParseShard(strings.ReplaceAll(args["shard"], "$(JOB_COMPLETION_INDEX)", strconv.Itoa(i)))
		require.NoError(t, err)
		lo, hi := sh.Range(count)
		assert.Equal(t, next, lo, "shard %d starts where shard %d ended", i, i-1)
		next = hi
	}
	assert.Equal(t, count, next, "the shards cover the whole fleet")
}
