// Fine-tunes a language model with TeRA on q_proj and v_proj over a text file, then saves the adapter.
// Usage: node finetune-lm.js <checkpoint folder> <text file> <adapter folder>
const fs = require('node:fs');
const tera = require('tera-peft');

const [checkpoint, textFile, adapterDir] = process.argv.slice(2);
const model = tera.models.fromPretrained(checkpoint); // config.json + model.safetensors (or shards), e.g. a LLaMA
const tokenizer = tera.tokenizers.Tokenizer.fromFolder(checkpoint); // its tokenizer.json
const peft = tera.injectAdapter(model, new tera.TeraConfig({ targetModules: ['q_proj', 'v_proj'] }));
peft.printTrainableParameters();

// The text as rows of `block` tokens.
const ids = tokenizer.encode(fs.readFileSync(textFile, 'utf8'), { addSpecialTokens: false }).ids;
const block = Math.min(64, model.config.maxPositions);
const rows = [];
for (let start = 0; start + block <= ids.length; start += block) rows.push(ids.slice(start, start + block));
if (rows.length === 0) throw new Error(`${textFile} has fewer than ${block} tokens`);

const optimizer = new tera.AdamW(peft.trainableParameters(), { lr: 0.05, weightDecay: 0 });
const batchSize = 4;
for (let step = 0; step < 20; step++) {
  const batch = Array.from({ length: batchSize }, (_, i) => rows[(step * batchSize + i) % rows.length]);
  const loss = tera.autograd.tidy(() => {
    const value = model.loss(batch); // next-token cross-entropy, as transformers' labels=input_ids
    value.backward();
    return value.item();
  });
  optimizer.step();
  optimizer.zeroGrad();
  console.log(`step ${step}: loss ${loss.toFixed(4)}`);
}
tera.saveAdapter(peft, adapterDir); // adapter_config.json + adapter_model.safetensors, as PEFT saves them

// Generation with the adapter merged into the weights (no extra cost per token), printing each token as it comes.
peft.mergeAdapter();
const prompt = tokenizer.encode('the quick').ids;
const decoder = tokenizer.incrementalDecoder({ skipSpecialTokens: true });
process.stdout.write('generated: ');
peft.generate([prompt], {
  maxNewTokens: 24, // stops earlier at the config's eos_token_id
  temperature: 0.8,
  topK: 40,
  seed: 0,
  onStep: ({ tokens }) => process.stdout.write(decoder.push(tokens[0])),
});
console.log(decoder.flush());
