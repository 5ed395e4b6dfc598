/**
 * binding.d.ts against the loaded addon: the declaration names exactly the
 * members the addon exports (functions, Storage's methods and accessors,
 * backendInfo's fields), and documents every one of them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import * as ts from 'typescript';

import { native } from '../lib/native/loader';

const declarationFile = path.join(__dirname, '..', 'binding.d.ts');
const declaration = ts.createSourceFile(
  declarationFile,
  fs.readFileSync(declarationFile, 'utf8'),
  ts.ScriptTarget.Latest,
  true,
);

function members(interfaceName: string): ts.TypeElement[] {
  const found = declaration.statements.find(
    (s): s is ts.InterfaceDeclaration => ts.isInterfaceDeclaration(s) && s.name.text === interfaceName,
  );
  if (!found) throw new Error(`binding.d.ts declares no interface ${interfaceName}`);
  return [...found.members];
}

const nameOf = (member: ts.TypeElement): string => {
  if (member.name && (ts.isIdentifier(member.name) || ts.isStringLiteral(member.name))) return member.name.text;
  return ts.isConstructSignatureDeclaration(member) ? 'new' : member.getText();
};
const declared = (interfaceName: string) => members(interfaceName).map(nameOf).sort();
const undocumented = (interfaceName: string) =>
  members(interfaceName)
    .filter((member) => ts.getJSDocCommentsAndTags(member).length === 0)
    .map(nameOf);

describe('binding.d.ts', () => {
  const binding = native();

  it('declares exactly the functions the addon exports', () => {
    expect(declared('NativeBinding')).toEqual(Object.keys(binding).sort());
  });

  it("declares exactly Storage's methods and accessors", () => {
    const prototype = Object.getOwnPropertyNames(binding.Storage.prototype).filter((name) => name !== 'constructor');
    expect(declared('NativeStorage')).toEqual(prototype.sort());
  });

  it("declares exactly backendInfo()'s fields (CUDA's optional ones included)", () => {
    const info = binding.backendInfo();
    expect(declared('NativeBackendInfo')).toEqual(Object.keys(info).sort());
    expect(declared('NativeCpuInfo')).toEqual(Object.keys(info.cpu).sort());
    const cuda = declared('NativeCudaInfo');
    expect(Object.keys(info.cuda).filter((key) => !cuda.includes(key))).toEqual([]);
    const optional = members('NativeCudaInfo')
      .filter((m) => ts.isPropertySignature(m) && m.questionToken === undefined)
      .map(nameOf);
    expect(optional.sort()).toEqual(['available', 'built']);
  });

  it.each([
    'NativeBinding',
    'NativeStorage',
    'NativeStorageConstructor',
    'NativeBackendInfo',
    'NativeCpuInfo',
    'NativeCudaInfo',
  ])('documents every member of %s', (interfaceName) => {
    expect(undocumented(interfaceName)).toEqual([]);
  });
});
