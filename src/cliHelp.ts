/** The help of the command line: an overview and each subcommand's own (`depthgate CMD --help`). */

const MODEL = `MODEL_DIR is a Hugging Face model directory; without one, the embedded default model runs
(with its FlexiDepth routers, or its SkipLayer routers for --policy skiplayer).`;

const LOAD = `      --threads N           CPU threads (default: the processors this process may use)
      --backend B           auto | cpu | cuda (default: $DEPTHGATE_BACKEND or auto)
      --kv-cache T          KV cache dtype: bf16 (default), f16 or f32
      --weights W           weights in memory: stored (default), or quantized on load (CPU): q8_0, q4_0,
                            q4_k (llama.cpp's Q4_K_M mix of Q4_K and Q6_K) or q6_k
      --no-generation-config  ignore the sampling defaults of the model's generation_config.json
      --addon FILE          router weights to apply to the model (repeatable; a relative path is
                            taken from the working directory)`;

const POLICY = `      --policy SPEC         which layers each token runs (default: the model's default policy, which
                            \`info\` shows: flexidepth when FlexiDepth routers come with the model, in
                            its own weights or as the default model's add-on; otherwise none):
                              none | static:skip=3+5 | static:attn=2,mlp=4+6 | flexidepth[:threshold=0.5]
                              | skiplayer | d3:alpha=0.9[,start=4][,min=8]
                              | speculative:draft=flexidepth[,maxDraft=4][,minConfidence=0.5][,target=0.8]
                                (exact mode: the draft's own parameters go alongside, e.g.
                                speculative:draft=static,skip=3+4,maxDraft=2)`;

const SAMPLING = `      --max-tokens N        most tokens to generate (default: the model's max_new_tokens, else 128)
      --temperature T       0 = greedy (default: the model's generation_config.json, else 0)
      --top-k K             sample among the K most likely tokens
      --top-p P             nucleus sampling threshold
      --seed S              sampling seed (same seed, same output)
      --stop TEXT           stop string (repeatable; escapes such as \\n and \\t are understood)
      --repetition-penalty R  transformers' repetition penalty (1 = off; default: the model's, else 1)
      --frequency-penalty F   OpenAI's frequency penalty, -2..2 (default 0)
      --presence-penalty P    OpenAI's presence penalty, -2..2 (default 0)
      --penalty-window N      the penalties look at the last N tokens (default: the whole context)
Unset sampling options take the model's generation_config.json defaults (--no-generation-config:
greedy, ignoring the file).`;

export const HELP: Record<string, string> = {
  generate: `Usage: depthgate generate [MODEL_DIR] --prompt TEXT [options]
Streams a completion of TEXT; Ctrl-C stops it (exit status 130).
${MODEL}

      --prompt, -p TEXT     the prompt (required)
      --chat                wrap the prompt as a user message in the model's chat template
      --system TEXT         system message (needs --chat)
${SAMPLING}
${POLICY}
      --trace FILE          write one JSON line per generated token: layers run, router weights;
                            FILE.html writes a page with each token coloured by its depth
      --show-depth          mark each generated token with the number of layers it ran: a colour
                            on a terminal that shows colour (not with NO_COLOR or TERM=dumb;
                            FORCE_COLOR=1 forces it), else the number after the token; the
                            legend goes to stderr
${LOAD}
`,
  chat: `Usage: depthgate chat [MODEL_DIR] [options]
An interactive conversation: each line you type is a user message, the reply streams back, and the
history is kept (the chat template renders it; only new tokens are computed). Ctrl-C stops a
reply; Ctrl-C at the prompt, or Ctrl-D, ends the chat.
${MODEL}

      --system TEXT         system message
${SAMPLING.replace('else 128)', 'else 256)')}
${POLICY}
${LOAD}
`,
  info: `Usage: depthgate info [MODEL_DIR] [options]
Architecture, parameters, dtype, memory, routers and default policy of a model, and the build
(version, backends, CPU kernels, CUDA).
${MODEL}

      --addon FILE          router weights to apply to the model (repeatable)
      --backend B           auto | cpu | cuda (default: $DEPTHGATE_BACKEND or auto)
      --weights W           weights in memory: stored (default), or quantized on load (CPU): q8_0, q4_0,
                            q4_k (llama.cpp's Q4_K_M mix of Q4_K and Q6_K) or q6_k
`,
  logits: `Usage: depthgate logits [MODEL_DIR] (--prompt TEXT | --tokens 1,2,3) [options]
The logits at every position: a table of each position's token, the most likely next tokens and
the layers run, or with --json {"logits": [[...], ...]} (with a routed policy also "executed":
[[1,0,...], ...] per position).
${MODEL}

      --prompt, -p TEXT     the text to evaluate (tokenized with the model's tokenizer)
      --tokens IDS          comma-separated token ids to evaluate
      --top N               next tokens shown per position in the table (default 3)
      --json                print JSON instead of the table
${POLICY}
${LOAD}
`,
  eval: `Usage: depthgate eval [MODEL_DIR] --text FILE [--policy SPEC ...] [options]
Perplexity of FILE and mean layers run per token, per policy.
${MODEL}

      --text FILE           the text to score (required)
      --policy SPEC         a policy to score (repeatable; default: the model's default policy)
      --window N            tokens per window, each in a fresh sequence (default min(256, context))
      --context N           unscored prompt tokens at the start of each window (default window/4);
                            the rest is scored as a generated continuation (D3 decays along it)
      --max-tokens N        stop after about N scored tokens
      --json                print the results as JSON
${LOAD}
`,
};

/** The overview the command line prints for --help, a bad command, or no command. */
export const USAGE = `Usage: depthgate COMMAND [MODEL_DIR] [options]

Commands:
  generate   stream a completion of a prompt
  chat       an interactive conversation that keeps its history
  info       a model's architecture, memory, routers and default policy; the build
  logits     the logits at every position of a text or of token ids
  eval       perplexity and mean layers per token, per policy
  serve      an OpenAI-compatible HTTP server

Without MODEL_DIR the embedded default model runs. \`depthgate COMMAND --help\` lists a command's
options; \`depthgate --version\` prints the version.
`;
