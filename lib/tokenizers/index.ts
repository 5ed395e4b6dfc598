/**
 * Tokenizers: Hugging Face tokenizer.json files (through @huggingface/tokenizers)
 * and the byte-level tokenizer of models trained here.
 */
export { byteLevelTokenizer, IncrementalDecoder, Tokenizer, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE } from './tokenizer';
export type {
  BatchEncodeOptions,
  ByteLevelOptions,
  DecodeOptions,
  EncodeOptions,
  Encoding,
  PaddingSide,
} from './tokenizer';
