package deploy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// docs splits a manifest file into its YAML documents.
func docs(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var out [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			out = append(out, []byte(d))
		}
	}
	return out
}

// strict decodes a document into v, refusing fields v's type does not
// have: a misspelt or misplaced field fails here rather than being
// dropped by the API server.
func strict(t *testing.T, doc []byte, v any) {
	t.Helper()
	require.NoError(t, yaml.UnmarshalStrict(doc, v), "%s", doc)
}

// objects are the Kubernetes manifests, by kind, each decoded strictly
// into Kubernetes' own type for its apiVersion.
type objects struct {
	deployment *appsv1.Deployment
	services   []*corev1.Service
	hpa        *autoscalingv2.HorizontalPodAutoscaler
	pdb        *policyv1.PodDisruptionBudget
	files      []string
}

func kubernetes(t *testing.T) objects {
	t.Helper()
	var o objects
	paths, err := filepath.Glob("kubernetes/*.yaml")
	require.NoError(t, err)
	for _, p := range paths {
		base := filepath.Base(p)
		if base == "kustomization.yaml" || base == "prometheus-adapter-values.yaml" {
			continue
		}
		o.files = append(o.files, base)
		for _, d := range docs(t, p) {
			var tm metav1.TypeMeta
			require.NoError(t, yaml.Unmarshal(d, &tm))
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 Deployment":
				o.deployment = &appsv1.Deployment{}
				strict(t, d, o.deployment)
			case "v1 Service":
				s := &corev1.Service{}
				strict(t, d, s)
				o.services = append(o.services, s)
			case "autoscaling/v2 HorizontalPodAutoscaler":
				o.hpa = &autoscalingv2.HorizontalPodAutoscaler{}
				strict(t, d, o.hpa)
			case "policy/v1 PodDisruptionBudget":
				o.pdb = &policyv1.PodDisruptionBudget{}
				strict(t, d, o.pdb)
			default:
				t.Fatalf("%s: unexpected %s %s", p, tm.APIVersion, tm.Kind)
			}
		}
	}
	require.NotNil(t, o.deployment)
	require.NotNil(t, o.hpa)
	require.NotNil(t, o.pdb)
	require.Len(t, o.services, 2)
	return o
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	o := kubernetes(t)
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name    string `json:"name"`
			NewName string `json:"newName"`
			NewTag  string `json:"newTag"`
		} `json:"images"`
	}
	b, err := os.ReadFile("kubernetes/kustomization.yaml")
	require.NoError(t, err)
	strict(t, b, &k)
	sort.Strings(k.Resources)
	assert.Equal(t, o.files, k.Resources)
	require.Len(t, k.Images, 1)
	assert.Equal(t, o.deployment.Spec.Template.Spec.Containers[0].Image, k.Images[0].Name, "kustomize renames the Deployment's image")
}

// server is what the manifests must agree with: voxserve's flags and
// Dockerfile.cuda's user.
type server struct {
	bin   string
	flags map[string]bool
	uid   int64
}

var (
	buildOnce sync.Once
	built     server
	buildErr  error
)

// TestMain removes the voxserve binary the tests build.
func TestMain(m *testing.M) {
	code := m.Run()
	if built.bin != "" {
		_ = os.RemoveAll(filepath.Dir(built.bin))
	}
	os.Exit(code)
}

func voxserve(t *testing.T) server {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "voxserve-deploy")
		if err != nil {
			buildErr = err
			return
		}
		built.bin = filepath.Join(dir, "voxserve")
		if out, err := exec.Command("go", "build", "-o", built.bin, "../cmd/voxserve").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		out, _ := exec.Command(built.bin, "-h").CombinedOutput() // -h exits 2 after the usage
		built.flags = map[string]bool{}
		for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z-]+)`).FindAllStringSubmatch(string(out), -1) {
			built.flags[m[1]] = true
		}
		df, err := os.ReadFile("../Dockerfile.cuda")
		if err != nil {
			buildErr = err
			return
		}
		m := regexp.MustCompile(`useradd [^\n]*--uid (\d+)`).FindSubmatch(df)
		if m == nil {
			buildErr = fmt.Errorf("Dockerfile.cuda: no useradd --uid")
			return
		}
		built.uid, _ = strconv.ParseInt(string(m[1]), 10, 64)
	})
	require.NoError(t, buildErr)
	require.True(t, built.flags["grpc-addr"], "voxserve -h lists its flags")
	return built
}

// flagValues checks that every argument is one of voxserve's flags, as
// --name=value, and returns them by name.
func flagValues(t *testing.T, s server, args []string) map[string]string {
	t.Helper()
	v := map[string]string{}
	for _, a := range args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		require.True(t, ok && strings.HasPrefix(a, "--"), "%q: write flags as --name=value", a)
		require.True(t, s.flags[name], "%q is not a voxserve flag", a)
		v[name] = value
	}
	return v
}

func port(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	n, err := strconv.Atoi(p)
	require.NoError(t, err)
	return int32(n)
}

func containerPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %q", c.Name, name)
	return 0
}

// probePort resolves a probe's port, by number or by the container port's name.
func probePort(t *testing.T, c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.String {
		return containerPort(t, c, p.StrVal)
	}
	return p.IntVal
}

func TestDeploymentAgreesWithTheServer(t *testing.T) {
	o := kubernetes(t)
	s := voxserve(t)
	pod := o.deployment.Spec.Template.Spec
	require.Len(t, pod.Containers, 1)
	c := pod.Containers[0]
	assert.Equal(t, []string{"voxserve"}, c.Command, "the image's binary")
	f := flagValues(t, s, c.Args)

	grpcPort, httpPort := port(t, f["grpc-addr"]), port(t, f["http-addr"])
	assert.Equal(t, grpcPort, containerPort(t, c, "grpc"))
	assert.Equal(t, httpPort, containerPort(t, c, "http"))
	assert.Equal(t, httpPort, probePort(t, c, c.StartupProbe.HTTPGet.Port))
	assert.Equal(t, "/healthz", c.StartupProbe.HTTPGet.Path)
	assert.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
	assert.Equal(t, httpPort, probePort(t, c, c.LivenessProbe.HTTPGet.Port))
	require.NotNil(t, c.ReadinessProbe.GRPC, "readiness from grpc.health.v1")
	assert.Equal(t, grpcPort, c.ReadinessProbe.GRPC.Port)
	annotations := o.deployment.Spec.Template.Annotations
	assert.Equal(t, strconv.Itoa(int(httpPort)), annotations["prometheus.io/port"])
	assert.Equal(t, "/metrics", annotations["prometheus.io/path"])

	// The pod outlives the drain: preStop, then --shutdown-grace.
	grace, err := time.ParseDuration(f["shutdown-grace"])
	require.NoError(t, err)
	drain := grace + time.Duration(c.Lifecycle.PreStop.Sleep.Seconds)*time.Second
	assert.Greater(t, time.Duration(*pod.TerminationGracePeriodSeconds)*time.Second, drain)

	assert.Equal(t, s.uid, *pod.SecurityContext.RunAsUser, "Dockerfile.cuda's user")
	assert.True(t, *pod.SecurityContext.RunAsNonRoot)
	assert.True(t, *c.SecurityContext.ReadOnlyRootFilesystem)
	assert.Equal(t, "1", c.Resources.Limits.Name("nvidia.com/gpu", "").String())
	assert.Equal(t, "/srv/voxserve/models", f["model-repository"], "the image's bundled models")

	for _, svc := range o.services {
		assert.Equal(t, o.deployment.Spec.Selector.MatchLabels, svc.Spec.Selector, svc.Name)
		for _, p := range svc.Spec.Ports {
			assert.Equal(t, containerPort(t, c, p.TargetPort.StrVal), map[string]int32{"grpc": grpcPort, "http": httpPort}[p.Name], "%s %s", svc.Name, p.Name)
		}
	}
	assert.Equal(t, "None", o.services[1].Spec.ClusterIP, "the headless Service for client-side balancing")
	assert.Equal(t, o.deployment.Name, o.hpa.Spec.ScaleTargetRef.Name)
	assert.Equal(t, o.deployment.Spec.Selector.MatchLabels, o.pdb.Spec.Selector.MatchLabels)
}

// adapterRule is the prometheus-adapter rule behind the autoscaler's metric.
func adapterRule(t *testing.T) (name string, series []string) {
	t.Helper()
	var v struct {
		Rules struct {
			Custom []struct {
				SeriesQuery string `json:"seriesQuery"`
				Name        struct {
					Matches string `json:"matches"`
					As      string `json:"as"`
				} `json:"name"`
				MetricsQuery string         `json:"metricsQuery"`
				Resources    map[string]any `json:"resources"`
			} `json:"custom"`
		} `json:"rules"`
	}
	b, err := os.ReadFile("kubernetes/prometheus-adapter-values.yaml")
	require.NoError(t, err)
	strict(t, b, &v)
	require.Len(t, v.Rules.Custom, 1)
	r := v.Rules.Custom[0]
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`\b(nv_[a-z_]+|voxserve_[a-z_]+)\{`).FindAllStringSubmatch(r.SeriesQuery+r.MetricsQuery, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			series = append(series, m[1])
		}
	}
	return r.Name.As, series
}

func TestAutoscalerMetricComesFromTheAdapter(t *testing.T) {
	o := kubernetes(t)
	name, series := adapterRule(t)
	require.Len(t, o.hpa.Spec.Metrics, 1)
	assert.Equal(t, name, o.hpa.Spec.Metrics[0].Pods.Metric.Name)
	assert.ElementsMatch(t, []string{"nv_inference_queue_duration_us", "nv_inference_request_success"}, series)
}

// kserve holds the KServe objects. Their types are KServe's CRDs, not in
// Kubernetes' API: the fields used are decoded strictly, the containers
// into Kubernetes' own type.
type servingRuntime struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Annotations           map[string]string `json:"annotations"`
		SupportedModelFormats []struct {
			Name       string `json:"name"`
			Version    string `json:"version"`
			AutoSelect bool   `json:"autoSelect"`
		} `json:"supportedModelFormats"`
		ProtocolVersions []string           `json:"protocolVersions"`
		Containers       []corev1.Container `json:"containers"`
	} `json:"spec"`
}

type inferenceService struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Predictor struct {
			Model struct {
				ModelFormat struct {
					Name    string `json:"name"`
					Version string `json:"version"`
				} `json:"modelFormat"`
				Runtime         string                      `json:"runtime"`
				ProtocolVersion string                      `json:"protocolVersion"`
				StorageURI      string                      `json:"storageUri"`
				Resources       corev1.ResourceRequirements `json:"resources"`
			} `json:"model"`
		} `json:"predictor"`
	} `json:"spec"`
}

func TestKServeRuntimeAgreesWithTheServer(t *testing.T) {
	s := voxserve(t)
	var rt servingRuntime
	strict(t, docs(t, "kserve/servingruntime.yaml")[0], &rt)
	assert.Equal(t, "serving.kserve.io/v1alpha1 ServingRuntime", rt.APIVersion+" "+rt.Kind)
	assert.Equal(t, []string{"grpc-v2"}, rt.Spec.ProtocolVersions, "voxserve speaks v2 over gRPC only")
	require.Len(t, rt.Spec.Containers, 1)
	c := rt.Spec.Containers[0]
	assert.Equal(t, "kserve-container", c.Name, "the name KServe merges the predictor into")
	f := flagValues(t, s, c.Args)
	assert.Equal(t, "/mnt/models", f["model-repository"], "where KServe's storage initializer puts storageUri")
	assert.Equal(t, port(t, f["grpc-addr"]), containerPort(t, c, "h2c"), "KServe routes gRPC to the h2c port")
	assert.Equal(t, port(t, f["grpc-addr"]), c.ReadinessProbe.GRPC.Port)
	assert.Equal(t, port(t, f["http-addr"]), probePort(t, c, c.LivenessProbe.HTTPGet.Port))
	assert.Equal(t, strconv.Itoa(int(port(t, f["http-addr"]))), rt.Spec.Annotations["prometheus.kserve.io/port"])
	assert.Equal(t, s.uid, *c.SecurityContext.RunAsUser)

	var isvc inferenceService
	strict(t, docs(t, "kserve/inferenceservice.yaml")[0], &isvc)
	assert.Equal(t, "serving.kserve.io/v1beta1 InferenceService", isvc.APIVersion+" "+isvc.Kind)
	m := isvc.Spec.Predictor.Model
	assert.Equal(t, rt.Metadata.Name, m.Runtime)
	assert.Equal(t, rt.Spec.SupportedModelFormats[0].Name, m.ModelFormat.Name)
	assert.Equal(t, rt.Spec.SupportedModelFormats[0].Version, m.ModelFormat.Version)
	assert.Contains(t, rt.Spec.ProtocolVersions, m.ProtocolVersion)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// TestDeploymentProbesAgainstAServer starts voxserve with the Deployment's
// arguments (its addresses on loopback, the demonstration bundle as the
// repository) and asks it what the kubelet and Prometheus would: the
// startup, readiness and liveness probes answer as the manifest expects,
// /metrics serves the series the autoscaler's rule reads, and SIGTERM
// ends the process cleanly within the pod's grace period.
func TestDeploymentProbesAgainstAServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	o := kubernetes(t)
	s := voxserve(t)
	pod := o.deployment.Spec.Template.Spec
	c := pod.Containers[0]
	repo := t.TempDir()
	require.NoError(t, os.CopyFS(filepath.Join(repo, "hyperdensity"), os.DirFS("../models/hyperdensity")))
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	var args []string
	for name, v := range flagValues(t, s, c.Args) {
		switch name {
		case "model-repository":
			v = repo
		case "grpc-addr":
			v = grpcAddr
		case "http-addr":
			v = httpAddr
		case "gpu":
			v = "off"
		}
		args = append(args, "--"+name+"="+v)
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = ".." // finds .deps/onnxruntime from the repository
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("voxserve's log:\n%s", logs.String())
		}
	})

	get := func(path string) (int, string) {
		r, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return r.StatusCode, string(b)
	}
	// The startup probe: its budget is the manifest's.
	budget := time.Duration(c.StartupProbe.PeriodSeconds*c.StartupProbe.FailureThreshold) * time.Second
	require.Eventually(t, func() bool { code, _ := get(c.StartupProbe.HTTPGet.Path); return code == 200 }, budget, 100*time.Millisecond)

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	service := "" // the kubelet's default
	if c.ReadinessProbe.GRPC.Service != nil {
		service = *c.ReadinessProbe.GRPC.Service
	}
	check := func() healthpb.HealthCheckResponse_ServingStatus {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			return healthpb.HealthCheckResponse_UNKNOWN
		}
		return r.Status
	}
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, check(), "readiness")
	code, _ := get(c.LivenessProbe.HTTPGet.Path)
	assert.Equal(t, 200, code, "liveness")

	_, metrics := get(o.deployment.Spec.Template.Annotations["prometheus.io/path"])
	_, series := adapterRule(t)
	for _, m := range series {
		assert.Regexp(t, `(?m)^`+m+`\{[^}]*model="hyperdensity"`, metrics, "the autoscaler's rule reads %s", m)
	}

	// SIGTERM: a clean exit within the pod's grace period.
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-done:
		done <- err
		assert.NoError(t, err, "a clean exit")
	case <-time.After(time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second):
		t.Fatal("voxserve outlived the pod's grace period")
	}
}
